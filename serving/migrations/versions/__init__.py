"""Revision files; a package only so the migrations ship inside the wheel."""
