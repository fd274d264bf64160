"""Studies whose figures and numbers live in docs/ (robust FV on another tool's loop)."""
