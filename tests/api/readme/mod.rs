//! The code blocks of README.md and participant/README.md that a user pastes, run or built as
//! they are written: each lives in a file (here, or the kit's example), and a test fails when
//! the README's block and the file differ.

mod from_rust;

/// The ```` ```lang ```` blocks of `text` that follow a line containing `heading`.
fn blocks_after<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let start = text.find(heading).expect("the heading is in README.md");
    text[start..]
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|block| block.split_once('\n').map_or("", |(_, code)| code))
        .collect()
}

/// Fails unless a block after `heading` in `readme` (named `name`) is `file` (named
/// `file_name`) to the letter.
fn shows_as_it_is(readme: (&str, &str), heading: &str, file: (&str, &str)) {
    let (name, text) = readme;
    let (file_name, code) = file;
    assert!(
        blocks_after(text, heading).contains(&code),
        "{name}'s block under {heading:?} differs from {file_name}: copy one into the other"
    );
}

#[test]
fn the_from_rust_recipe_in_readme_is_the_test_that_runs() {
    shows_as_it_is(
        ("README.md", include_str!("../../../README.md")),
        "### From Rust",
        (
            "tests/api/readme/from_rust.rs",
            include_str!("from_rust.rs"),
        ),
    );
}

#[test]
fn the_kits_whole_service_in_its_readme_is_the_example_ci_builds() {
    shows_as_it_is(
        (
            "participant/README.md",
            include_str!("../../../participant/README.md"),
        ),
        "### A whole service",
        (
            "participant/examples/seats.rs",
            include_str!("../../../participant/examples/seats.rs"),
        ),
    );
}

#[test]
fn the_rust_client_block_in_readme_is_the_example_ci_runs() {
    shows_as_it_is(
        ("README.md", include_str!("../../../README.md")),
        "## Call it from Rust, Python or TypeScript",
        (
            "client/examples/checkout.rs",
            include_str!("../../../client/examples/checkout.rs"),
        ),
    );
}

#[test]
fn the_typescript_block_in_readme_is_the_file_ci_type_checks_and_runs() {
    shows_as_it_is(
        ("README.md", include_str!("../../../README.md")),
        "## Call it from Rust, Python or TypeScript",
        (
            "tests/typescript/readme.ts",
            include_str!("../../typescript/readme.ts"),
        ),
    );
}

#[test]
fn no_readme_snippet_binds_every_interface() {
    for (name, text) in [
        ("README.md", include_str!("../../../README.md")),
        (
            "participant/README.md",
            include_str!("../../../participant/README.md"),
        ),
    ] {
        for block in blocks_after(text, "# ") {
            assert!(
                !block.contains("0.0.0.0"),
                "{name} has a snippet that binds 0.0.0.0; examples listen on loopback: {block}"
            );
        }
    }
}
