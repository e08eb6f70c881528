//! Unit tests of window assignment, on a manual clock.
