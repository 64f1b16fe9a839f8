"""Stage `data` (workflow/rules/data.smk): read a data set, quarantine what cannot be used, split by patient."""
