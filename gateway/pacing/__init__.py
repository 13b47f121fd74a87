"""How often a person is buzzed: pushes about the same item collapse (``collapse``), bursts fold into
one follow-up digest (``digest``), and quiet hours hold what is not urgent (``quiet``). Pure: the
stores ask these modules what to write and write it in the ingest transaction."""
