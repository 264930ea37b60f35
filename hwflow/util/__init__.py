"""Small helpers shared by rooms that must not depend on each other."""
