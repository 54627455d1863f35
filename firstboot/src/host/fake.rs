//! A recording fake of every host trait: files live in memory, commands
//! answer from a script of canned outputs, services are remembered. Tests
//! assert on exactly what a step would have done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{
    join_root, Cmd, Exec, FileSpec, Files, Host, HostError, Output, ServiceSpec, Services,
};

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Wrote(String),
    Ran(String),
    Ensured(String),
    Stopped(String),
    /// The kernel's hostname was set.
    Hostname(String),
}

#[derive(Debug, Default)]
pub struct Record {
    pub events: Vec<Event>,
    pub files: BTreeMap<String, FileSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// Canned HTTP answers by "addr path"; missing ones fail as unreachable.
    pub http: BTreeMap<String, (u16, String)>,
    /// Canned answers: the first entry whose key is a prefix of the
    /// command's display answers it; otherwise exit 0 with no output.
    pub answers: Vec<(String, Output)>,
    /// Answers used once each, before [`Record::answers`] (in order: the
    /// first unused entry whose key is a prefix of the command's display).
    pub once: Vec<(String, Output)>,
    /// The kernel's hostname ([`super::Uts`]).
    pub kernel_hostname: String,
}

/// The shared record behind a fake [`Host`].
#[derive(Debug, Clone, Default)]
pub struct Recording(pub Arc<Mutex<Record>>);

impl Recording {
    /// A [`Host`] whose every effect lands in this record; paths under `/`.
    pub fn host(&self) -> Host {
        Host {
            files: Box::new(self.clone()),
            exec: Box::new(self.clone()),
            services: Box::new(self.clone()),
            net: Box::new(self.clone()),
        }
    }

    pub fn answer(&self, prefix: &str, code: i32, stdout: &str, stderr: &str) {
        self.lock().answers.push((
            prefix.into(),
            Output {
                code,
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
        ));
    }

    /// Like [`Recording::answer`], for the first matching command only: a
    /// later one gets the next `answer_once` or the standing answer.
    pub fn answer_once(&self, prefix: &str, code: i32, stdout: &str, stderr: &str) {
        self.lock().once.push((
            prefix.into(),
            Output {
                code,
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
        ));
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Ran(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    pub fn file(&self, rel: &str) -> Option<String> {
        self.lock()
            .files
            .get(rel.trim_start_matches('/'))
            .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
    }
}

impl Files for Recording {
    fn abs(&self, rel: &str) -> PathBuf {
        join_root(std::path::Path::new("/"), rel)
    }
    fn write(&self, file: &FileSpec) -> Result<bool, HostError> {
        let mut r = self.lock();
        let key = file.path.trim_start_matches('/').to_string();
        let changed = r.files.get(&key) != Some(file);
        if changed {
            r.events.push(Event::Wrote(key.clone()));
            r.files.insert(key, file.clone());
        }
        Ok(changed)
    }
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self
            .lock()
            .files
            .get(rel.trim_start_matches('/'))
            .map(|f| f.contents.clone()))
    }
    /// A file, or a directory some recorded file is under.
    fn exists(&self, rel: &str) -> bool {
        let key = rel.trim_start_matches('/').trim_end_matches('/');
        let dir = format!("{key}/");
        self.lock()
            .files
            .keys()
            .any(|k| k == key || k.starts_with(&dir))
    }
    /// The first path component of every recorded file under `rel`.
    fn list(&self, rel: &str) -> Result<Vec<String>, HostError> {
        let dir = format!("{}/", rel.trim_start_matches('/').trim_end_matches('/'));
        let mut names: Vec<String> = self
            .lock()
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&dir))
            .filter_map(|rest| rest.split('/').next())
            .map(String::from)
            .collect();
        names.dedup();
        Ok(names)
    }
}

impl Exec for Recording {
    fn output(&self, cmd: &Cmd) -> Result<Output, HostError> {
        let mut r = self.lock();
        let line = cmd.display();
        r.events.push(Event::Ran(line.clone()));
        if let Some(i) = r
            .once
            .iter()
            .position(|(p, _)| line.starts_with(p.as_str()))
        {
            return Ok(r.once.remove(i).1);
        }
        Ok(r.answers
            .iter()
            .find(|(p, _)| line.starts_with(p.as_str()))
            .map(|(_, o)| o.clone())
            .unwrap_or_default())
    }
}

impl Services for Recording {
    fn ensure(&self, svc: &ServiceSpec) -> Result<(), HostError> {
        let mut r = self.lock();
        if r.services.get(&svc.name) != Some(svc) {
            r.events.push(Event::Ensured(svc.name.clone()));
            r.services.insert(svc.name.clone(), svc.clone());
        }
        Ok(())
    }
    fn running(&self, name: &str) -> bool {
        self.lock().services.contains_key(name)
    }
    fn stop(&self, name: &str) -> Result<(), HostError> {
        let mut r = self.lock();
        if r.services.remove(name).is_some() {
            r.events.push(Event::Stopped(name.into()));
        }
        Ok(())
    }
}

impl super::Uts for Recording {
    fn hostname(&self) -> Result<String, HostError> {
        Ok(self.lock().kernel_hostname.clone())
    }
    fn set_hostname(&self, name: &str) -> Result<(), HostError> {
        let mut r = self.lock();
        r.events.push(Event::Hostname(name.into()));
        r.kernel_hostname = name.into();
        Ok(())
    }
}

impl super::Net for Recording {
    fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), HostError> {
        let key = format!("{addr} {path}");
        let mut r = self.lock();
        r.events
            .push(Event::Ran(format!("GET http://{addr}{path}")));
        r.http.get(&key).cloned().ok_or(HostError::Command {
            command: format!("GET http://{addr}{path}"),
            message: "connection refused".into(),
        })
    }
}
