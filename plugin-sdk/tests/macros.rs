//! Misusing `#[filter]`, `#[map]` or `#[flat_map]` must fail to compile with
//! an error at the user's own tokens. The expected messages live in
//! `ui/*.stderr`; regenerate them with `TRYBUILD=overwrite`.

#[test]
fn macro_misuse_is_reported_at_the_users_tokens() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
