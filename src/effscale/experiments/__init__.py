"""Many training runs at once: the scaling study, the coefficient search, their executors."""
