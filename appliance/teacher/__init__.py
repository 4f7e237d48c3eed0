"""Teacher clients: the cloud model the router asks when the student is unsure."""

from __future__ import annotations

from .base import BudgetExceeded, Teacher, TeacherAnswer, TeacherChunk, TeacherError, TeacherParams
from .factory import make_teacher, teacher_status

__all__ = [
    "BudgetExceeded",
    "Teacher",
    "TeacherAnswer",
    "TeacherChunk",
    "TeacherError",
    "TeacherParams",
    "make_teacher",
    "teacher_status",
]
