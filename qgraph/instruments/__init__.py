"""Instruments that observe passes from outside: text form, diffs, numeric verification."""
