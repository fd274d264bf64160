"""Data sets the zoo is trained on."""
