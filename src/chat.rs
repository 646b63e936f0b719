//! The Gemma turn template, as the chat template stored in Gemma's GGUF files writes it:
//!
//! ```text
//! <bos><start_of_turn>user\n{content | trim}<end_of_turn>\n<start_of_turn>model\n{content | trim}<end_of_turn>\n ... <start_of_turn>model\n
//! ```
//!
//! Gemma has no system role: system (and `developer`) messages are folded into the next user
//! turn, `system + "\n\n" + user`, as Gemma's own templates do. Turns are tokenized piece by
//! piece: the control tokens by id, the text between them without parsing control pieces, so
//! a user who writes `<start_of_turn>` gets text, not a turn (the tokenizer splits at control
//! tokens anyway, so this is the same sequence the template's whole text tokenizes to).
//!
//! For the prompt cache, [`ChatTemplate::answer_tail`] gives the tokens the next request's
//! prompt will hold for an answer (its text as the tokenizer writes it, then
//! `<end_of_turn>\n`): the engine snapshots the state after exactly those tokens, so the
//! next turn resumes there and runs only its new turn.

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A role as rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `system` or `developer`: folded into the next user turn.
    System,
    User,
    /// `assistant`, rendered as Gemma's `model`.
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// The control tokens of the template and how BOS is handled, from the model's tokenizer.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    bos: Option<u32>,
    start_of_turn: u32,
    end_of_turn: u32,
    /// `<start_of_turn>model\n`: the end of every chat prompt.
    generation_prompt: Vec<u32>,
}

impl ChatTemplate {
    /// `None` when the vocabulary has no `<start_of_turn>` / `<end_of_turn>` (not a Gemma
    /// chat vocabulary: only `/v1/completions` can be used).
    pub fn new(tok: &Tokenizer) -> Option<ChatTemplate> {
        let start_of_turn = tok.token_id("<start_of_turn>")?;
        let mut generation_prompt = vec![start_of_turn];
        generation_prompt.extend(tok.encode("model\n", false, false).ok()?);
        Some(ChatTemplate {
            bos: tok.add_bos_by_default().then_some(tok.bos()),
            start_of_turn,
            end_of_turn: tok.token_id("<end_of_turn>")?,
            generation_prompt,
        })
    }

    /// The template for chatting with the model in `file`: Gemma's turn format, which the
    /// file's `tokenizer.chat_template` (a Jinja text) must write when it has one. Another
    /// format, or a vocabulary without the turn tokens, is an error that says so.
    pub fn for_file(file: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate> {
        if let Ok(jinja) = file.get_str("tokenizer.chat_template") {
            if !(jinja.contains("<start_of_turn>") && jinja.contains("<end_of_turn>")) {
                let start: String = jinja.chars().take(60).collect();
                return Err(Error::Unsupported(format!(
                    "the file's chat template (tokenizer.chat_template) is not Gemma's turn \
                     format, the only one rgemma knows (it begins {start:?})"
                )));
            }
        }
        ChatTemplate::new(tok).ok_or_else(|| {
            Error::Unsupported(
                "the vocabulary has no <start_of_turn> / <end_of_turn> tokens: not a Gemma chat \
                 model"
                    .into(),
            )
        })
    }

    /// The tokens that continue a conversation whose state the caller keeps between turns
    /// (`rg-run -cnv`) with the user's next message, up to the opening of the model's turn.
    /// The first turn starts with BOS and has `system`, if any, folded in (as [`render`]
    /// does); a later turn first closes the model's previous turn, whose `<end_of_turn>` was
    /// sampled but not fed. Over a conversation the tokens fed are those [`render`] gives for
    /// the whole history.
    ///
    /// [`render`]: ChatTemplate::render
    pub fn next_user_turn(
        &self,
        tok: &Tokenizer,
        first: bool,
        system: Option<&str>,
        content: &str,
    ) -> Result<Vec<u32>> {
        if first {
            let mut messages = Vec::with_capacity(2);
            if let Some(sys) = system.filter(|s| !s.trim().is_empty()) {
                messages.push(Message {
                    role: Role::System,
                    content: sys.to_string(),
                });
            }
            messages.push(Message {
                role: Role::User,
                content: content.to_string(),
            });
            return self.render(tok, &messages);
        }
        let mut out = vec![self.end_of_turn];
        out.extend(tok.encode("\n", false, false)?);
        self.push_turn(tok, "user", content, &mut out)?;
        self.push_generation_prompt(tok, &mut out)?;
        Ok(out)
    }

    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// The prompt of `messages`: BOS, the turns, then the opening of the model's turn.
    pub fn render(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        out.extend(self.bos);
        let mut system = String::new();
        for m in messages {
            match m.role {
                Role::System => {
                    if !system.is_empty() {
                        system.push_str("\n\n");
                    }
                    system.push_str(m.content.trim());
                }
                Role::User => {
                    let text = if system.is_empty() {
                        m.content.trim().to_string()
                    } else {
                        let folded = format!("{system}\n\n{}", m.content.trim());
                        system.clear();
                        folded
                    };
                    self.push_turn(tok, "user", &text, &mut out)?;
                }
                Role::Assistant => {
                    // A system message with no user turn after it before the model's: it
                    // becomes a user turn of its own.
                    if !system.is_empty() {
                        self.push_turn(tok, "user", &std::mem::take(&mut system), &mut out)?;
                    }
                    self.push_turn(tok, "model", &m.content, &mut out)?;
                }
            }
        }
        if !system.is_empty() {
            self.push_turn(tok, "user", &system, &mut out)?;
        }
        self.push_generation_prompt(tok, &mut out)?;
        Ok(out)
    }

    /// `<start_of_turn>{role}\n{content | trim}<end_of_turn>\n`.
    fn push_turn(
        &self,
        tok: &Tokenizer,
        role: &str,
        content: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        out.push(self.start_of_turn);
        out.extend(tok.encode(&format!("{role}\n{}", content.trim()), false, false)?);
        out.push(self.end_of_turn);
        out.extend(tok.encode("\n", false, false)?);
        Ok(())
    }

    /// `<start_of_turn>model\n`.
    fn push_generation_prompt(&self, _tok: &Tokenizer, out: &mut Vec<u32>) -> Result<()> {
        out.extend_from_slice(&self.generation_prompt);
        Ok(())
    }

    /// The tokens that follow a chat prompt when the next request renders the answer
    /// `content` after it: the answer's text as the tokenizer writes it, `<end_of_turn>`,
    /// `\n`. `None` when the rendered turn does not begin with the generation prompt (the
    /// answer's first characters merge with `model\n` into other tokens).
    pub fn answer_tail(&self, tok: &Tokenizer, content: &str) -> Option<Vec<u32>> {
        let mut turn = Vec::with_capacity(content.len() / 2 + 8);
        self.push_turn(tok, "model", content, &mut turn).ok()?;
        turn.starts_with(&self.generation_prompt)
            .then(|| turn[self.generation_prompt.len()..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::{ChatTemplate, Message, Role};
    use crate::tokenizer::Tokenizer;

    fn tiny() -> Tokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/tiny-fortunes-q8_0.gguf"
        );
        let file = crate::gguf::GgufFile::open(std::path::Path::new(path)).unwrap();
        Tokenizer::from_gguf(&file).unwrap().unwrap()
    }

    fn msg(role: Role, content: &str) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn renders_what_the_file_template_writes() {
        let tok = tiny();
        let t = ChatTemplate::new(&tok).unwrap();
        let messages = [
            msg(Role::System, "Be brief."),
            msg(Role::User, "  Hi there "),
            msg(Role::Assistant, "Hello.\n"),
            msg(Role::User, "Bye"),
        ];
        // The text the GGUF's Jinja chat template writes (system folded into the first user
        // turn, contents trimmed), tokenized whole with control pieces parsed.
        let text = "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n\
                    <start_of_turn>model\nHello.<end_of_turn>\n\
                    <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n";
        let want = tok.encode(text, true, true).unwrap();
        assert_eq!(t.render(&tok, &messages).unwrap(), want);
    }

    #[test]
    fn turn_by_turn_feeds_what_render_gives_for_the_history() {
        let tok = tiny();
        let t = ChatTemplate::new(&tok).unwrap();
        let mut fed = t
            .next_user_turn(&tok, true, Some("Be brief."), " Hi there ")
            .unwrap();
        // The model's answer as sampled: its text, then <end_of_turn> (not fed).
        fed.extend(tok.encode("Hello.", false, false).unwrap());
        fed.extend(
            t.next_user_turn(&tok, false, Some("ignored"), "Bye")
                .unwrap(),
        );
        let whole = t
            .render(
                &tok,
                &[
                    msg(Role::System, "Be brief."),
                    msg(Role::User, "Hi there"),
                    msg(Role::Assistant, "Hello."),
                    msg(Role::User, "Bye"),
                ],
            )
            .unwrap();
        assert_eq!(fed, whole);
    }

    #[test]
    fn control_pieces_in_content_stay_text() {
        let tok = tiny();
        let t = ChatTemplate::new(&tok).unwrap();
        let sot = tok.token_id("<start_of_turn>").unwrap();
        let got = t
            .render(&tok, &[msg(Role::User, "a<start_of_turn>model\nb")])
            .unwrap();
        assert_eq!(got.iter().filter(|&&id| id == sot).count(), 2);
    }

    #[test]
    fn answer_tail_is_what_the_next_prompt_holds() {
        let tok = tiny();
        let t = ChatTemplate::new(&tok).unwrap();
        let first = [msg(Role::User, "Hi")];
        let prompt = t.render(&tok, &first).unwrap();
        let tail = t.answer_tail(&tok, "Hello there.").unwrap();
        let next = t
            .render(
                &tok,
                &[
                    msg(Role::User, "Hi"),
                    msg(Role::Assistant, "Hello there."),
                    msg(Role::User, "More"),
                ],
            )
            .unwrap();
        let mut prefix = prompt.clone();
        prefix.extend(&tail);
        assert!(next.starts_with(&prefix));
        assert_eq!(tail.last(), tok.encode("\n", false, false).unwrap().last());
    }

    #[test]
    fn a_lone_system_message_becomes_a_user_turn() {
        let tok = tiny();
        let t = ChatTemplate::new(&tok).unwrap();
        let got = t.render(&tok, &[msg(Role::System, "Rules")]).unwrap();
        let want = tok
            .encode(
                "<start_of_turn>user\nRules<end_of_turn>\n<start_of_turn>model\n",
                true,
                true,
            )
            .unwrap();
        assert_eq!(got, want);
    }
}
