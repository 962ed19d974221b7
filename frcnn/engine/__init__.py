"""Training machinery: the step and the loop (trainer), the hooks around them, checkpoints, schedules,
distributed set-up."""
