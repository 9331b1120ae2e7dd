"""Learning from the operators' answers: the learned-examples store and the learner."""
