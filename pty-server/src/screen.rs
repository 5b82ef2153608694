//! The server-side terminal emulator of one terminal, and its snapshot.
//!
//! Every byte the PTY produces is fed to a `vt100` parser, attached or not.
//! A reconnecting client does not get raw history replayed (which would
//! re-run terminal queries and redraw a screen that no longer exists); it
//! gets a snapshot: a byte stream that rebuilds the current state on a freshly
//! reset xterm of the same size (protocol.md §6.5).
//!
//! vt100 keeps no copy of the normal screen while the alternate screen is
//! active, so the emulator clones the normal screen at the moment a program
//! switches (vim, htop, less): the snapshot draws it first, then switches.

use std::fmt::Write as _;

#[derive(Default)]
struct Callbacks {
    title: String,
}

impl vt100::Callbacks for Callbacks {
    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        self.title = String::from_utf8_lossy(title).chars().take(256).collect();
    }
}

pub struct Emulator {
    parser: vt100::Parser<Callbacks>,
    saved_normal: Option<Box<vt100::Screen>>,
}

/// Sequences that switch to the alternate screen.
const ALT_ENTER: [&[u8]; 3] = [b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h"];

fn nz(v: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(v.max(1)).unwrap_or(std::num::NonZeroU16::MIN)
}

impl Emulator {
    pub fn new(rows: u16, cols: u16, scrollback: usize) -> Self {
        Emulator {
            parser: vt100::Parser::new_with_callbacks(
                nz(rows),
                nz(cols),
                scrollback,
                Callbacks::default(),
            ),
            saved_normal: None,
        }
    }

    pub fn process(&mut self, mut bytes: &[u8]) {
        // Split at each switch to the alternate screen, to keep a copy of
        // the normal screen as it was just before.
        while let Some(p) = find_alt_enter(bytes) {
            self.parser.process(&bytes[..p]);
            if !self.parser.screen().alternate_screen() {
                self.saved_normal = Some(Box::new(self.parser.screen().clone()));
            }
            let n = ALT_ENTER
                .iter()
                .find(|s| bytes[p..].starts_with(s))
                .map_or(1, |s| s.len());
            self.parser.process(&bytes[p..p + n]);
            bytes = &bytes[p + n..];
        }
        self.parser.process(bytes);
        if !self.parser.screen().alternate_screen() {
            self.saved_normal = None;
        }
    }

    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.parser.set_size(nz(rows), nz(cols));
        if let Some(s) = self.saved_normal.as_mut() {
            s.set_size(nz(rows), nz(cols));
        }
    }

    pub fn title(&self) -> &str {
        &self.parser.callbacks().title
    }

    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }

    /// The bytes that rebuild this state on a reset terminal of this size.
    /// They contain no sequence that makes a terminal answer.
    pub fn snapshot(&self) -> Vec<u8> {
        let live = self.parser.screen();
        let alt = live.alternate_screen();
        let normal: &vt100::Screen = match (&self.saved_normal, alt) {
            (Some(s), true) => s,
            _ => live,
        };
        let mut out = String::new();
        // Scrollback and screen as plain lines (SGR only), so that the lines
        // beyond the screen land in the client's scrollback…
        let mut history = String::new();
        let mut state = vt100::capture::BasicFormattedCaptureState::new();
        let _ = normal.write_contents_formatted_basic(
            &mut history,
            vt100::capture::BasicFormattedCaptureRange::Full(&mut state),
        );
        out.push_str("\x1b[m");
        out.push_str(&history.replace('\n', "\r\n"));
        // …then the screen itself, exactly, with the cursor.
        out.push_str("\x1b[m");
        out.push_str(&normal.contents_formatted());
        if alt {
            out.push_str("\x1b[?1049h");
            out.push_str(&live.contents_formatted());
        }
        out.push_str(&live.input_mode_formatted());
        if !self.title().is_empty() {
            let clean: String = self.title().chars().filter(|c| !c.is_control()).collect();
            let _ = write!(out, "\x1b]2;{clean}\x07");
        }
        out.into_bytes()
    }
}

fn find_alt_enter(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        let p = i + b[i..].iter().position(|&c| c == 0x1b)?;
        if ALT_ENTER.iter().any(|s| b[p..].starts_with(s)) {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

/// Where the last complete sequence or character of `tail` ends, if the
/// tail stops in the middle of an escape sequence or a UTF-8 character.
/// A snapshot is taken there so that `OUTPUT` after it re-sends the partial
/// bytes whole (§6.5). `None` means the tail ends on a boundary.
pub fn incomplete_suffix(tail: &[u8]) -> Option<usize> {
    struct B {
        pos: usize,
        boundary: usize,
    }
    impl vte::Perform for B {
        fn print(&mut self, _: char) {
            self.boundary = self.pos;
        }
        fn execute(&mut self, _: u8) {
            self.boundary = self.pos;
        }
        fn csi_dispatch(&mut self, _: &vte::Params, _: &[u8], _: bool, _: char) {
            self.boundary = self.pos;
        }
        fn esc_dispatch(&mut self, _: &[u8], _: bool, _: u8) {
            self.boundary = self.pos;
        }
        fn osc_dispatch(&mut self, _: &[&[u8]], _: bool) {
            self.boundary = self.pos;
        }
        fn unhook(&mut self) {
            self.boundary = self.pos;
        }
    }
    // Parsing may start at the last ESC: an ESC always begins a new sequence.
    // Without one, only a split UTF-8 character can be open (≤ 3 bytes).
    let start = tail
        .iter()
        .rposition(|&c| c == 0x1b)
        .unwrap_or(tail.len().saturating_sub(4));
    let mut p = vte::Parser::new();
    let mut b = B {
        pos: start,
        boundary: start,
    };
    for (i, byte) in tail[start..].iter().enumerate() {
        b.pos = start + i + 1;
        p.advance(&mut b, std::slice::from_ref(byte));
    }
    (b.boundary < tail.len()).then_some(b.boundary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(snapshot: &[u8], rows: u16, cols: u16) -> vt100::Parser {
        let mut p = vt100::Parser::new(nz(rows), nz(cols), 1000);
        p.process(snapshot);
        p
    }

    fn history(s: &mut vt100::Screen) -> Vec<String> {
        let n = {
            s.set_scrollback(usize::MAX);
            s.scrollback()
        };
        let mut out = Vec::new();
        for k in (1..=n).rev() {
            s.set_scrollback(k);
            out.push(s.rows(0, s.size().1.into()).next().unwrap_or_default());
        }
        s.set_scrollback(0);
        out
    }

    #[test]
    fn snapshot_restores_screen_scrollback_cursor_and_colours() {
        let mut e = Emulator::new(10, 40, 1000);
        for i in 0..57 {
            e.process(format!("\x1b[3{}mline {i}\x1b[m\r\n", i % 8).as_bytes());
        }
        e.process("wide: 日本語 é\r\n$ \x1b[1mbold".as_bytes());
        e.process(b"\x1b]2;my title\x07");
        let snap = e.snapshot();
        let mut r = replay(&snap, 10, 40);
        assert_eq!(r.screen().contents(), e.screen().contents());
        assert_eq!(r.screen().cursor_position(), e.screen().cursor_position());
        assert_eq!(
            r.screen().contents_formatted(),
            e.screen().contents_formatted()
        );
        let mut live = e.parser.screen().clone();
        assert_eq!(history(r.screen_mut()), history(&mut live));
        assert_eq!(history(&mut live).len(), 49, "59 lines on a 10-row screen");
        assert!(String::from_utf8_lossy(&snap).contains("\x1b]2;my title\x07"));
    }

    #[test]
    fn full_screen_programs_come_back_with_the_shell_under_them() {
        let mut e = Emulator::new(8, 30, 100);
        e.process(b"user@host:~$ vim notes.txt\r\n");
        e.process(b"\x1b[?1049h\x1b[H\x1b[2Jhello from vim\x1b[8;1H-- INSERT --\x1b[1;6H\x1b[?1h\x1b[?2004h");
        let snap = e.snapshot();
        let mut r = replay(&snap, 8, 30);
        assert!(r.screen().alternate_screen());
        assert_eq!(r.screen().contents(), e.screen().contents());
        assert_eq!(r.screen().cursor_position(), (0, 5));
        assert!(r.screen().application_cursor() && r.screen().bracketed_paste());
        // Leaving vim shows the shell as it was.
        r.process(b"\x1b[?1049l");
        e.process(b"\x1b[?1049l");
        assert_eq!(r.screen().contents(), e.screen().contents());
        assert!(r.screen().contents().contains("vim notes.txt"));
    }

    #[test]
    fn snapshots_never_contain_terminal_queries() {
        let mut e = Emulator::new(24, 80, 100);
        // Programs asked the terminal things; the answers went to them once.
        e.process(b"\x1b[c\x1b[>c\x1b[6n\x1b[5n\x1b]11;?\x07\x1b[?2026$pprompt$ ");
        let s = String::from_utf8_lossy(&e.snapshot()).into_owned();
        for q in ["\x1b[c", "\x1b[>c", "\x1b[6n", "\x1b[5n", "\x1b]11;?", "$p"] {
            assert!(!s.contains(q), "{q:?} in {s:?}");
        }
    }

    #[test]
    fn incomplete_sequences_and_characters_are_found() {
        assert_eq!(incomplete_suffix(b"abc"), None);
        assert_eq!(incomplete_suffix(b"abc\r\n"), None);
        assert_eq!(incomplete_suffix(b"abc\x1b[31m"), None);
        assert_eq!(incomplete_suffix(b"abc\x1b[3"), Some(3));
        assert_eq!(incomplete_suffix(b"abc\x1b"), Some(3));
        assert_eq!(incomplete_suffix(b"ab\x1b]2;title"), Some(2));
        assert_eq!(incomplete_suffix(b"ab\x1b]2;title\x07"), None);
        let e = "aé".as_bytes();
        assert_eq!(incomplete_suffix(&e[..2]), Some(1));
        assert_eq!(incomplete_suffix(e), None);
        let j = "x日".as_bytes();
        assert_eq!(incomplete_suffix(&j[..3]), Some(1));
    }
}

#[cfg(test)]
mod speed {
    /// How fast the emulator alone parses flood output (base64 lines).
    /// `cargo test --release -p cove-pty --lib emulator_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn emulator_speed() {
        let line = format!("{}\r\n", "A".repeat(76));
        let chunk = line.repeat(4096 / line.len());
        let total = 40usize << 20;
        for scrollback in [0, 1000] {
            let mut e = super::Emulator::new(24, 80, scrollback);
            let t = std::time::Instant::now();
            let mut n = 0;
            while n < total {
                e.process(chunk.as_bytes());
                n += chunk.len();
            }
            let s = t.elapsed().as_secs_f64();
            println!("scrollback {scrollback}: {:.1} MB/s", n as f64 / s / 1e6);
        }
    }
}
