"""Authentication: tokens, password hashing, the platform secret key."""
