"""Stage `external` (rules external_set, external in workflow/rules/evaluate.smk; `hemaflow evaluate`): a trained model scored on a second labelled data set."""
