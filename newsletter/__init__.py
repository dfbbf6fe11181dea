"""newsletter: a weekly email newsletter kept in git and sent through an email service."""

__version__ = "0.1.0"
