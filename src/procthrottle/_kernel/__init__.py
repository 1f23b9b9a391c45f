"""Layer 1: the kernel semaphore that every other layer builds on."""
