"""Stage `predict` (workflow/rules/predict.smk and `hemaflow predict`): new images to probabilities, decisions, reports."""
