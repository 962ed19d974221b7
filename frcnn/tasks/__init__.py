"""The commands' tasks: each turns a composed config into a run of the floors below (training, evaluation,
inference, export, explanation, tracking). Scripts call these and nothing else; nothing below imports them."""
