"""Knowledge-graph unlearning: the unlearning world and its splits, fine-tuning and unlearning
(objectives in losses.py), probes and metrics, the inferability judge, the comparison."""
