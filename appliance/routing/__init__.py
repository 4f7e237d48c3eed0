"""Deciding who answers: how sure the student is (signals), whether it was right (grading), a learned
router over the signals, and the measures that compare routing policies."""
