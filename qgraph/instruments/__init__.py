"""Instruments that observe passes from outside (``base.Instrument``: ``before_pass`` /
``after_pass`` / ``after_failure`` hooks), one class per module: ``summary``, ``text``,
``dump``, ``verify_each``, ``bisect``, ``memory``, ``report``, ``callback``; helpers:
``textform`` (canonical text), ``diff``, ``verify`` (ORT runs), ``neighbourhood``, ``svg``,
``report_html``."""
