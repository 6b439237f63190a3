"""Knowledge unlearning: objectives (GradAscent, GradDiff, NPO, SimNPO, IdkDPO, RMU) as plain torch functions."""
