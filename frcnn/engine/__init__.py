"""Training machinery: the step and the loop, checkpoints, schedules, distributed set-up."""
