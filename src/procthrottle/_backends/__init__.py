"""Layer 4: semaphores kept outside this host's kernel (Redis), for limits across machines."""
