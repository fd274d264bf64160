"""Data sets the zoo is trained on: procedural patterns and geometry, CIFAR-10, ImageFolder."""
