"""Measuring whether answers are right: eval cases, scoring, reports (`edgeagent eval`)."""
