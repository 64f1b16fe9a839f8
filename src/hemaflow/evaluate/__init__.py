"""Stage `evaluate` (workflow/rules/evaluate.smk): cell- and patient-level metrics, figures, the leaderboard."""
