"""The product's building blocks; the stack composes them."""
