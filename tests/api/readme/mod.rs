//! The code blocks of README.md that a user pastes, run as they are written: each lives in a
//! file here, and a test fails when README's block and the file differ.

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

#[test]
fn the_from_rust_recipe_in_readme_is_the_test_that_runs() {
    let readme = include_str!("../../../README.md");
    let blocks = blocks_after(readme, "### From Rust");
    let file = include_str!("from_rust.rs");
    assert!(
        blocks.contains(&file),
        "README's From Rust block differs from tests/api/readme/from_rust.rs: copy the file \
         into README (or the other way round)"
    );
}
