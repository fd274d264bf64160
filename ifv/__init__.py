"""ifv: Inverse Feature Visualization (Reinbold & Westermann), Grad-IFV."""
