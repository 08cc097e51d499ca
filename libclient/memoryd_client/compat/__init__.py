"""Facades that let code written against another memory API run on memoryd unchanged."""
