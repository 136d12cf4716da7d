"""Foundations with no kernel and no BCC: errors, text and file safety, C struct mirrors, stop signals."""
