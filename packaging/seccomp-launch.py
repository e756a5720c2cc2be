#!/usr/bin/env python3
"""Run a command under the seccomp filter a systemd unit file asks for.

Usage: seccomp-launch.py UNIT_FILE -- COMMAND [ARGS...]

Why this exists: a unit's SystemCallFilter= only bites when systemd starts
the service, so a filter that kills the agent (SIGSYS) is otherwise found
only on a volunteer's machine. This launcher reads the filter from the unit
file itself -- never from a hand-copied list that could drift from it --
builds the same seccomp filter systemd would, loads it into this process and
exec()s the command, so tests can run the real binary under the real filter
without systemd, root or a running service manager.

What is modelled (as systemd 252, Debian 12, does it; see systemd.exec(5)
and systemd's src/core/load-fragment.c and src/shared/seccomp-util.c):
  * SystemCallFilter=: the first non-empty assignment decides the mode. A
    plain list makes an allow-list (and @default is added implicitly); a
    list starting with "~" makes a deny-list. Later lines add to the set
    when their polarity matches the mode and remove from it otherwise. An
    empty assignment resets everything. "name:ERRNO" / "name:kill" on a
    deny-list entry overrides the action for that call.
  * SystemCallErrorNumber=: what a filtered call gets; unset, empty or
    "kill" means the process is killed with SIGSYS (SCMP_ACT_KILL_PROCESS).
  * SystemCallArchitectures=: a separate filter that kills calls made
    through other ABIs; the syscall filter is installed for each allowed
    local ABI, as systemd does.
Group names (@system-service, ...) are expanded by asking the installed
systemd (`systemd-analyze syscall-filter`), so the groups are exactly those
of the systemd that would run the unit, not a copy that ages.

Not modelled: the other settings systemd also implements with seccomp
(RestrictAddressFamilies=, RestrictNamespaces=, RestrictRealtime=,
LockPersonality=, MemoryDenyWriteExecute=, Protect*=, PrivateDevices=,
SystemCallLog=), drop-in files and specifiers. Those fail calls with an
error (EPERM, EAFNOSUPPORT, ...) rather than kill, and are not what this
launcher is for. libseccomp sets no_new_privs before loading the filter,
which is what lets a non-root user load it (the unit sets
NoNewPrivileges=yes anyway).

Exit status: that of COMMAND (this process becomes COMMAND); 77 when the
check cannot run here (no systemd-analyze, no libseccomp bindings), so a
test can report "skipped"; 2 for usage errors; 1 for a unit or filter this
launcher cannot turn into a seccomp filter; 126/127 when COMMAND cannot be
executed, like a shell.
"""

import errno
import os
import platform
import shutil
import subprocess
import sys

EXIT_SKIP = 77
EXIT_USAGE = 2
EXIT_FAIL = 1

# The system interpreter: Debian's python3-seccomp only installs the
# bindings for it, while PATH may pick another python3 (pyenv, venv).
SYSTEM_PYTHON = "/usr/bin/python3"
REEXEC_GUARD = "SECCOMP_LAUNCH_REEXECED"

# systemd's SystemCallArchitectures= names -> libseccomp's Arch attribute
# names (systemd's seccomp_arch_from_string()).
SYSTEMD_ARCHES = {
    "x86": "X86",
    "x86-64": "X86_64",
    "x32": "X32",
    "arm": "ARM",
    "arm64": "AARCH64",
    "mips": "MIPS",
    "mips64": "MIPS64",
    "mips64-n32": "MIPS64N32",
    "mips-le": "MIPSEL",
    "mips64-le": "MIPSEL64",
    "mips64-le-n32": "MIPSEL64N32",
    "parisc": "PARISC",
    "parisc64": "PARISC64",
    "ppc": "PPC",
    "ppc64": "PPC64",
    "ppc64-le": "PPC64LE",
    "riscv64": "RISCV64",
    "s390": "S390",
    "s390x": "S390X",
}

# The ABIs a process on this machine could use (systemd's
# seccomp_local_archs[]): without SystemCallArchitectures= systemd filters
# every one of them, so a secondary ABI is no way around the filter. The
# native ABI comes last, as in systemd: once its filter is loaded, the
# seccomp() call that would load the next one may itself be denied.
LOCAL_ARCHES = {
    "x86_64": ["X86", "X32", "X86_64"],
    "aarch64": ["ARM", "AARCH64"],
}

# systemd's marker for "kill" as a per-call action or error number.
KILL = "kill"


class LaunchError(Exception):
    """An expected problem: reported in one line, never as a traceback."""

    def __init__(self, message, status=EXIT_FAIL):
        super().__init__(message)
        self.status = status


def warn(message):
    print(f"seccomp-launch: warning: {message}", file=sys.stderr)


def import_seccomp():
    """The libseccomp bindings, re-running under the system python if the
    python3 on PATH does not have them."""
    try:
        # Imported here, not at the top, so that a missing binding is a
        # "skip" (exit 77) with a hint rather than an ImportError traceback.
        import seccomp  # noqa: PLC0415

        return seccomp
    except ImportError:
        pass
    here = os.path.realpath(sys.executable or "")
    if (
        os.environ.get(REEXEC_GUARD) is None
        and os.path.exists(SYSTEM_PYTHON)
        and os.path.realpath(SYSTEM_PYTHON) != here
    ):
        os.environ[REEXEC_GUARD] = "1"
        try:
            os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
        except OSError:
            pass  # Fall through to the skip message below.
    raise LaunchError(
        "the libseccomp python bindings are not installed "
        "(Debian: apt-get install python3-seccomp; import name `seccomp`)",
        EXIT_SKIP,
    )


def read_unit(path):
    """The (key, value, line number) assignments of the unit's [Service]
    section, in order, with systemd's comment and continuation rules."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except OSError as e:
        raise LaunchError(f"cannot read unit file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LaunchError(f"unit file {path} is not UTF-8") from None

    assignments = []
    section = None
    pending, pending_line = "", 0
    for number, line in enumerate(raw, start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#;"):
            continue
        if pending and stripped and stripped[0] in "#;":
            continue  # Comments inside a continued line are skipped.
        if stripped.endswith("\\"):
            # A trailing backslash continues the value on the next line,
            # joined with a space.
            if not pending:
                pending_line = number
            pending += stripped[:-1] + " "
            continue
        if pending:
            stripped, number = pending + stripped, pending_line
            pending = ""
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        if "=" not in stripped:
            raise LaunchError(f"{path}:{number}: not a key=value line: {stripped!r}")
        key, value = stripped.split("=", 1)
        if section == "Service":
            assignments.append((key.strip(), value.strip(), number))
    if pending:
        raise LaunchError(f"{path}: the last line ends in a continuation backslash")
    return assignments


def parse_errno(text, allow_zero):
    """An errno name or number as systemd accepts it (1..4095; 0 too for a
    per-call action), "kill" for SIGSYS, or None if invalid."""
    if text == KILL:
        return KILL
    if text.isdigit():
        value = int(text)
    else:
        value = getattr(errno, text, None) if text.startswith("E") else None
        if not isinstance(value, int):
            return None
    if value > 4095 or value < 0 or (value == 0 and not allow_zero):
        return None
    return value


class GroupExpander:
    """Expands @groups with the installed systemd's own tables."""

    def __init__(self):
        self.tool = shutil.which("systemd-analyze")
        if self.tool is None:
            raise LaunchError(
                "systemd-analyze is not installed, so the unit's system call "
                "groups cannot be expanded (Debian: apt-get install systemd)",
                EXIT_SKIP,
            )
        self.cache = {}

    def members(self, group):
        """The system call names in a group, nested groups expanded; None
        for a group this systemd does not know."""
        if group in self.cache:
            return self.cache[group]
        try:
            out = subprocess.run(
                [self.tool, "syscall-filter", "--no-pager", group],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as e:
            raise LaunchError(f"cannot run {self.tool}: {e.strerror}", EXIT_SKIP) from None
        if out.returncode != 0:
            # systemd ignores an unknown group (with a warning) rather than
            # refusing the unit, and so do we.
            self.cache[group] = None
            return None
        names = []
        self.cache[group] = names  # Guards against a group containing itself.
        for line in out.stdout.splitlines():
            item = line.strip()
            # The output is "@group", then an indented "# description", then
            # one indented member per line.
            if not line.startswith((" ", "\t")) or not item or item.startswith("#"):
                continue
            if item.startswith("@"):
                names.extend(self.members(item) or [])
            else:
                names.append(item)
        return names


class Filter:
    """SystemCallFilter= and friends, merged line by line as systemd does
    (config_parse_syscall_filter + seccomp_parse_syscall_filter)."""

    def __init__(self, seccomp, groups):
        self.seccomp = seccomp
        self.groups = groups
        self.allow_list = False
        # Native syscall number -> per-call action (None: the default one).
        self.calls = None
        self.error_number = KILL
        self.arches = set()

    def add_filter_line(self, value, where):
        if value == "":
            self.calls, self.allow_list = None, False
            return
        invert = value.startswith("~")
        if invert:
            value = value[1:]
        if self.calls is None:
            # The first assignment (since any empty reset) fixes the mode;
            # later ones only edit the set.
            self.calls = {}
            self.allow_list = not invert
            if self.allow_list:
                # What every process needs to run and exit at all.
                self.apply("@default", None, invert=False, where=where, quiet=True)
        for word in value.split():
            name, _, action_text = word.partition(":")
            action = None
            if action_text:
                action = parse_errno(action_text, allow_zero=True)
                if action is None:
                    warn(f"{where}: bad error number in {word!r}, ignoring it (as systemd does)")
                    continue
                if not invert:
                    warn(f"{where}: allowed call {word!r} cannot take an error number, ignoring it")
                    continue
            self.apply(name, action, invert, where, quiet=False)

    def apply(self, name, action, invert, where, quiet):
        if name.startswith("@"):
            members = self.groups.members(name)
            if members is None:
                warn(f"{where}: unknown system call group {name}, ignoring it (as systemd does)")
                return
            for member in members:
                self.apply(member, action, invert, where, quiet=True)
            return
        number = self.seccomp.resolve_syscall(self.seccomp.Arch.NATIVE, name)
        if number == -1:  # __NR_SCMP_ERROR: unknown to this libseccomp.
            if not quiet:
                warn(f"{where}: unknown system call {name}, ignoring it (as systemd does)")
            return
        # A line of the unit's own polarity adds; the other polarity takes
        # the call back out ("~foo" after an allow-list, "foo" after a
        # deny-list).
        if invert != self.allow_list:
            self.calls[number] = action
        else:
            self.calls.pop(number, None)

    def set_error_number(self, value, where):
        if value in ("", KILL):
            self.error_number = KILL
            return
        number = parse_errno(value, allow_zero=False)
        if number is None:
            warn(f"{where}: bad SystemCallErrorNumber={value}, ignoring it (as systemd does)")
            return
        self.error_number = number

    def add_arches(self, value, where):
        if value == "":
            self.arches = set()
            return
        for word in value.split():
            if word == "native":
                self.arches.add(self.native_arch_name())
            elif word in SYSTEMD_ARCHES:
                self.arches.add(SYSTEMD_ARCHES[word])
            else:
                warn(f"{where}: unknown architecture {word}, ignoring it (as systemd does)")

    def native_arch_name(self):
        # The bindings give the same 32-bit AUDIT_ARCH token signed in one
        # place and unsigned in the other.
        native = self.seccomp.system_arch() & 0xFFFFFFFF
        for name in SYSTEMD_ARCHES.values():
            if getattr(self.seccomp.Arch, name) & 0xFFFFFFFF == native:
                return name
        raise LaunchError(f"libseccomp reports an architecture this launcher does not know ({native})")

    def deny_action(self, per_call):
        """The seccomp action for a denied call (systemd's negative_action,
        with SCMP_ACT_KILL_PROCESS where the kernel has it)."""
        choice = self.error_number if per_call is None else per_call
        if choice == KILL:
            # KILL_PROCESS needs seccomp API level 3 (Linux 4.14); before
            # that systemd falls back to killing the thread.
            return self.seccomp.KILL_PROCESS if self.seccomp.get_api() >= 3 else self.seccomp.KILL
        return self.seccomp.ERRNO(choice)

    def load(self):
        sc = self.seccomp
        native = self.native_arch_name()
        local = [a for a in LOCAL_ARCHES.get(platform.machine(), []) if a != native]
        local.append(native)

        if self.arches:
            # SystemCallArchitectures=: one rule-less filter that allows
            # only the listed ABIs (libseccomp's default bad-arch action
            # kills, as under systemd).
            arch_filter = sc.SyscallFilter(sc.ALLOW)
            for name in sorted(self.arches):
                if name != native:
                    arch_filter.add_arch(getattr(sc.Arch, name))
            arch_filter.load()
            local = [a for a in local if a in self.arches or a == native]

        if self.calls is None or (not self.allow_list and not self.calls):
            return  # No SystemCallFilter= (or nothing left in it): no filter.

        if self.allow_list:
            default, rule = self.deny_action(None), sc.ALLOW
        else:
            default, rule = sc.ALLOW, None

        # One filter per ABI, as systemd does: a call that does not exist on
        # one ABI must not stop the rule for the ABIs that have it.
        for name in local:
            arch = getattr(sc.Arch, name)
            f = sc.SyscallFilter(default)
            if name != native:
                f.remove_arch(sc.Arch.NATIVE)
                f.add_arch(arch)
            # Calls from other ABIs are the architecture filter's business.
            f.set_attr(sc.Attr.ACT_BADARCH, sc.ALLOW)
            for number, per_call in sorted(self.calls.items()):
                action = rule if rule is not None else self.deny_action(per_call)
                try:
                    f.add_rule_exactly(action, number)
                except RuntimeError as e:
                    # -EDOM: the call does not exist on this ABI; systemd
                    # skips it too.
                    if "errno = -%d)" % errno.EDOM in str(e):
                        continue
                    raise LaunchError(
                        f"libseccomp refused a rule for system call {number} on {name}: {e}"
                    ) from None
            try:
                f.load()
            except (RuntimeError, OSError) as e:
                if name == native:
                    raise LaunchError(f"cannot load the seccomp filter: {e}") from None
                # systemd, too, carries on when a secondary ABI's filter
                # cannot be loaded (e.g. the kernel lacks that ABI).
                warn(f"could not load the filter for {name}, skipping it: {e}")


def parse_args(argv):
    if "--" not in argv:
        raise LaunchError("usage: seccomp-launch.py UNIT_FILE -- COMMAND [ARGS...]", EXIT_USAGE)
    split = argv.index("--")
    before, command = argv[:split], argv[split + 1 :]
    if len(before) != 1 or not command:
        raise LaunchError("usage: seccomp-launch.py UNIT_FILE -- COMMAND [ARGS...]", EXIT_USAGE)
    return before[0], command


def main(argv):
    unit, command = parse_args(argv)
    assignments = read_unit(unit)
    # Checked before anything else needs them, so a machine without them
    # says "skip" rather than failing half-way.
    seccomp = import_seccomp()
    groups = GroupExpander()

    f = Filter(seccomp, groups)
    for key, value, number in assignments:
        where = f"{unit}:{number}"
        if key == "SystemCallFilter":
            f.add_filter_line(value, where)
        elif key == "SystemCallErrorNumber":
            f.set_error_number(value, where)
        elif key == "SystemCallArchitectures":
            f.add_arches(value, where)

    # Resolve the program before the filter is in place: once it is, only
    # execve() itself is certain to be allowed.
    program = command[0]
    if os.sep not in program:
        found = shutil.which(program)
        if found is None:
            raise LaunchError(f"{program}: command not found", 127)
        program = found

    f.load()
    try:
        os.execv(program, command)
    except OSError as e:
        status = 127 if e.errno == errno.ENOENT else 126
        raise LaunchError(f"cannot run {program}: {e.strerror}", status) from None


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except LaunchError as e:
        print(f"seccomp-launch: {e}", file=sys.stderr)
        sys.exit(e.status)
    except KeyboardInterrupt:
        sys.exit(130)
