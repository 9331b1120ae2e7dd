# CMake toolchain file: cross-compile for 64-bit ARM Linux (Raspberry Pi 4/5, Raspberry Pi OS
# bookworm) on an x86_64 Debian/Ubuntu machine with Debian's cross compilers:
#   apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
# Used by scripts/build-wheelhouse.sh pi4|pi5 on a non-ARM machine. Bookworm's glibc (2.36)
# and libstdc++ (GCC 12) match what the cross toolchain links against.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Headers and libraries come from the cross sysroot only; programs (cmake's helpers, git)
# from the build machine.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
