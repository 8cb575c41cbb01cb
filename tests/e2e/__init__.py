"""End-to-end: the demo as a real process, and a moto server that a second process reads back."""
