"""RL-stage math: policy-gradient objectives, entropy rewards/losses and EM-INF decoding."""
