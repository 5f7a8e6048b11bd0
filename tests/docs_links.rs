//! The README is a guide (short, with a table of contents) and every
//! relative link in it and in `docs/` leads somewhere: the file exists, and
//! an `#anchor` names a heading of the page it points to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use erp_devstack::envoy::repo_root;

fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo_root().join("README.md")];
    for entry in fs::read_dir(repo_root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// The targets of the inline links `[text](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// but `-` and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

fn broken_links(page: &Path) -> Vec<String> {
    let text = fs::read_to_string(page).unwrap();
    let mut broken = Vec::new();
    for link in links(&text) {
        if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = link
            .split_once('#')
            .map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
        let target = if path.is_empty() {
            page.to_path_buf()
        } else {
            page.parent().unwrap().join(path)
        };
        if !target.exists() {
            broken.push(format!("{link}: no {}", target.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            let heads = anchors(&fs::read_to_string(&target).unwrap_or_default());
            if !heads.iter().any(|h| h == anchor) {
                broken.push(format!("{link}: no heading #{anchor}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        checked += links(&fs::read_to_string(&page).unwrap()).len();
        broken.extend(
            broken_links(&page)
                .into_iter()
                .map(|b| format!("{}: {b}", page.display())),
        );
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 20, "only {checked} links found: is the scan broken?");
}

#[test]
fn a_broken_link_and_a_missing_anchor_are_found() {
    let dir = std::env::temp_dir().join(format!("erp-links-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let page = dir.join("page.md");
    fs::write(
        &page,
        "# A page\n\n## Its part\n\n[ok](#its-part) [gone](missing.md) [no anchor](page.md#nowhere) `[code](x.md)`\n",
    )
    .unwrap();
    let broken = broken_links(&page);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].starts_with("missing.md"), "{broken:?}");
    assert!(broken[1].contains("#nowhere"), "{broken:?}");
}

#[test]
fn the_readme_is_a_guide_with_contents_and_the_two_commands() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines: move detail to docs/");
    assert!(readme.contains("## Contents"));
    assert!(readme.contains("make run") && readme.contains("make test"));
    // Every page of docs/ is reachable from the README.
    for page in pages().iter().skip(1) {
        let name = page.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("(docs/{name})")),
            "README does not link docs/{name}"
        );
    }
}
