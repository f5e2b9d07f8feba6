//! What only the emulator's tests need: reading the AWS STS XML answers.

/// The text of the first `<tag>` element in an XML body.
pub fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..end].to_owned())
}
