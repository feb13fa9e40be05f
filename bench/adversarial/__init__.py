"""Cases of ``bench/adversarial_inputs.py``, one module per front door or artefact (each exposes ``cases``)."""
