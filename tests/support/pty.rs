//! Drives the real binary in a pseudo-terminal and reads its screen through a VT100 parser.

#![allow(dead_code)]

use portable_pty::{native_pty_system, Child, CommandBuilder, MasterPty, PtySize};
use std::io::{Read, Write};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub struct PtyApp {
    pub parser: vt100::Parser,
    rx: Receiver<Vec<u8>>,
    writer: Box<dyn Write + Send>,
    pub child: Box<dyn Child + Send + Sync>,
    _master: Box<dyn MasterPty + Send>,
}

impl PtyApp {
    pub fn spawn(args: &[&str], env: &[(&str, &str)], cols: u16, rows: u16) -> PtyApp {
        let pty = native_pty_system();
        let pair = pty
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_influence"));
        for a in args {
            cmd.arg(a);
        }
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pair.slave.spawn_command(cmd).expect("spawn influence");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        PtyApp {
            parser: vt100::Parser::new(rows, cols, 0),
            rx,
            writer,
            child,
            _master: pair.master,
        }
    }

    fn pump(&mut self, wait: Duration) {
        if let Ok(bytes) = self.rx.recv_timeout(wait) {
            self.parser.process(&bytes);
            while let Ok(more) = self.rx.try_recv() {
                self.parser.process(&more);
            }
        }
    }

    pub fn screen(&self) -> String {
        self.parser.screen().contents()
    }

    /// Waits until `pred(screen)` holds; panics with the screen after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let end = Instant::now() + timeout;
        loop {
            if pred(&self.screen()) {
                return;
            }
            if Instant::now() > end {
                panic!("timed out waiting for {what}; screen:\n{}", self.screen());
            }
            self.pump(Duration::from_millis(50));
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to pty");
        self.writer.flush().expect("flush pty");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> u32 {
        let end = Instant::now() + timeout;
        loop {
            self.pump(Duration::from_millis(20));
            if let Some(status) = self.child.try_wait().expect("poll child") {
                // Collect whatever it wrote while leaving.
                self.pump(Duration::from_millis(100));
                return status.exit_code();
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("process did not exit; screen:\n{}", self.screen());
            }
        }
    }
}
