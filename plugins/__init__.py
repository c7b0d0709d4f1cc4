"""Built-in robustdistill method plugins."""
