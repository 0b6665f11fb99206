//! Where each key and value of a YAML document sits, by path (`pcs[2].ip`), so errors found
//! after deserialisation can still say file:line:column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct Positions {
    at: HashMap<String, (usize, usize)>,
}

impl Positions {
    pub fn index(text: &str) -> Positions {
        let mut walker = Walker::default();
        // A syntax error is reported by the deserialiser, with its own position.
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        Positions { at: walker.at }
    }

    /// The full path of the first key named `key` at or below `prefix`.
    pub fn key_under(&self, prefix: &str, key: &str) -> Option<String> {
        let suffix = format!(".{key}");
        self.at
            .iter()
            .filter(|(p, _)| p.starts_with(prefix) && (p.ends_with(&suffix) || p.as_str() == key))
            .min_by_key(|(_, pos)| **pos)
            .map(|(p, _)| p.clone())
    }

    /// 1-based line and column of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(&pos) = self.at.get(&p) {
                return pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return (1, 1),
            }
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        keys_seen: usize,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
}

impl Walker {
    /// The path of the node that starts now, advancing the parent's state.
    fn next_path(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map {
                path,
                key,
                keys_seen,
            }) => match key.take() {
                Some(k) => Some(join(path, &k)),
                None => {
                    // This node is a key. A block mapping is placed at its first key
                    // (the parser marks its start later on the line).
                    *keys_seen += 1;
                    if *keys_seen == 1 {
                        self.at.insert(path.clone(), pos);
                    }
                    if let Some(k) = scalar_key {
                        let p = join(path, k);
                        self.at.insert(p, pos);
                        *key = Some(k.to_string());
                    } else {
                        *key = Some("?".into());
                    }
                    None
                }
            },
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(p) = self.next_path(Some(&value), mark) {
                    self.at.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.next_path(None, mark).unwrap_or_default();
                self.at.entry(path.clone()).or_insert(pos);
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        keys_seen: 0,
                    }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let _ = self.next_path(None, mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_sequence_items() {
        let text =
            "images:\n  win:\n    path: /x\npcs:\n  - name: a\n    ip: 1.2.3.4\n  - name: b\n";
        let p = Positions::index(text);
        assert_eq!(p.find("images.win.path"), (3, 5));
        assert_eq!(p.find("pcs[0].ip"), (6, 5));
        assert_eq!(p.find("pcs[1].name"), (7, 5));
        assert_eq!(p.find("pcs[1].missing"), (7, 5));
    }
}
