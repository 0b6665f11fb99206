//! Headless Chromium driven over its DevTools protocol, with a minimal WebSocket client in
//! std: enough to run JavaScript in a page (`Runtime.evaluate`) as a user's clicks would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Page {
    chromium: Child,
    ws: TcpStream,
    next_id: u64,
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.chromium.kill();
        let _ = self.chromium.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // DevTools may keep the connection open: read up to the body's length.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if n == 0 || len.is_some_and(|l| body.len() >= l) {
                return body.to_string();
            }
        }
        assert!(n > 0, "DevTools closed the connection");
    }
}

impl Page {
    /// Opens `url` in headless Chromium (profile in `profile`) at `size` ("w,h").
    pub fn open(url: &str, profile: &Path, size: &str) -> Page {
        let _ = std::fs::remove_file(profile.join("DevToolsActivePort"));
        let chromium = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg("--remote-debugging-port=0")
            .arg(format!("--window-size={size}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium");
        let start = Instant::now();
        let port: u16 = loop {
            if let Ok(t) = std::fs::read_to_string(profile.join("DevToolsActivePort")) {
                if let Some(p) = t.lines().next().and_then(|l| l.parse().ok()) {
                    break p;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let target = loop {
            let list: Value = serde_json::from_str(&http_get(port, "/json/list")).unwrap();
            let page = list
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["type"] == "page");
            if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                break ws.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no page target");
            std::thread::sleep(Duration::from_millis(100));
        };
        let path = target.splitn(4, '/').nth(3).unwrap();
        let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            ws,
            "GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(ws.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "{line}");
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        ws.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Page {
            chromium,
            ws,
            next_id: 1,
        }
    }

    fn send(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81u8];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).unwrap();
    }

    fn receive(&mut self) -> Value {
        let mut head = [0u8; 2];
        self.ws.read_exact(&mut head).unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.ws.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.ws.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut data = vec![0u8; len];
        self.ws.read_exact(&mut data).unwrap();
        serde_json::from_slice(&data).unwrap_or(Value::Null)
    }

    /// Runs `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": "Runtime.evaluate", "params": {
            "expression": expression, "awaitPromise": true, "returnByValue": true}});
        self.send(&msg.to_string());
        loop {
            let v = self.receive();
            if v["id"] == id {
                assert!(
                    v["result"]["exceptionDetails"].is_null(),
                    "{expression}: {v}"
                );
                return v["result"]["result"]["value"].clone();
            }
        }
    }

    /// Runs `expression` in the page every 100 ms until it gives something other than null
    /// or false, for up to 10 s, and returns that: what a page shows only once its script
    /// has run, or a request of its has come back, is read as soon as it is there and not
    /// after a guessed sleep. An evaluation lost to the page's own navigation counts as
    /// null; `expression` must not throw otherwise.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expression);
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the page showed no {what} in 10 s ({expression})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
