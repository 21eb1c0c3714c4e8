"""Small local HTTP servers speaking the providers' documented wire formats."""
