"""Knowledge-graph unlearning: objectives, evaluation and the inferability judge."""
