"""`python -m sim.view`: serve the page (`sim/app.py`) and print its address once the server answers.

It runs `solara run sim/app.py` in this process. Solara's page loads its JavaScript and CSS from a CDN (through a
caching proxy in the server); where no CDN can be reached, `python -m sim.view --install-assets` puts those npm
packages, fetched with npm, into the server's cache.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from sim.cli import Parser, UsageError, error_exit
from sim.replay import RUNS_ENV

APP_PATH = Path(__file__).with_name("app.py")
REPLAY_ENV = "RUN_H5"  # the record the replay page opens when its address names none


# --- what the page needs installed -----------------------------------------------------------------------------------
def incompatible_widgets() -> str | None:
    """Why Mesa's SolaraViz cannot render here, or None: Mesa 3.3 uses Vuetify 2 components that ipyvuetify 2+
    (Vuetify 3) dropped, which leaves the page blank (mesa issue #3806)."""
    from importlib.metadata import version

    installed = {name: version(name) for name in ("ipyvuetify", "ipyvue")}
    if all(int(v.split(".")[0]) < 2 for v in installed.values()):
        return None
    found = ", ".join(f"{name} {v}" for name, v in installed.items())
    return f"Mesa's SolaraViz needs ipyvuetify<2 and ipyvue<2 (found {found}): pip install 'ipyvuetify<2' 'ipyvue<2'"


# --- solara's browser assets ----------------------------------------------------------------------------------------
# `{{cdn}}/NAME@VERSION/...` in solara's page template, `${this.getCdn()}/NAME@VERSION/...` in its widgets
_CDN_REFERENCE = re.compile(r"(?:\{\{cdn\}\}|\$\{this\.getCdn\(\)\})/((?:@[\w-]+/)?[\w.-]+@\d[\w.-]*)/")


def cdn_packages() -> list[str]:
    """The npm packages (`name@version`) the page loads from solara's CDN: the solara app bundle for the installed
    ipyvuetify, require.js, font-awesome, and the draggable grid that Mesa's SolaraViz lays its components out in."""
    import solara
    import solara.server.settings as server_settings
    from solara.util import IPYVUETIFY_V3

    root = Path(solara.__file__).parent
    grid = "gridlayout_v3.vue" if IPYVUETIFY_V3 else "gridlayout.vue"
    template = root / "server" / "templates" / "solara.html.j2"
    text = template.read_text() + (root / "widgets" / "vue" / grid).read_text()
    other_app = "@widgetti/solara-vuetify-app@" if IPYVUETIFY_V3 else "@widgetti/solara-vuetify3-app@"
    packages = {name for name in _CDN_REFERENCE.findall(text) if not name.startswith(other_app)}
    packages.add(server_settings.assets.fontawesome_path.strip("/").split("/")[0])
    return sorted(packages)


def assets_dir() -> Path:
    """Where solara's server looks for CDN files before fetching them (`{sys.prefix}/share/solara/cdn` by default)."""
    import solara.server.settings as server_settings

    return Path(server_settings.assets.proxy_cache_dir)


def missing_assets() -> list[str]:
    """The CDN packages not yet in solara's asset cache (all of them are needed where no CDN can be reached)."""
    return [name for name in cdn_packages() if not (assets_dir() / name / "package.json").is_file()]


def install_assets() -> list[str]:
    """Fetch every missing CDN package with `npm pack` and unpack it into solara's asset cache; returns their names."""
    missing = missing_assets()
    with tempfile.TemporaryDirectory() as tmp:
        for name in missing:
            done = subprocess.run(["npm", "pack", name, "--pack-destination", tmp, "--silent"], capture_output=True,
                                  text=True, check=True)  # fmt: skip
            with tarfile.open(Path(tmp) / done.stdout.strip().splitlines()[-1]) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith("package/")]
                for member in members:
                    member.name = member.name.removeprefix("package/")  # npm tarballs hold everything under package/
                tar.extractall(assets_dir() / name, members=members, filter="data")
    return missing


# --- python -m sim.view ----------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts connections on `host:port` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _announce(host: str, port: int, replay: bool) -> None:
    if wait_for_port(host, port, timeout=120.0):
        base = f"http://{host}:{port}"
        print(f"organism-networks page: {base}/  (soup: {base}/soup, replay: {base}/replay)", flush=True)
        if replay:
            print(f"replaying {os.environ[REPLAY_ENV]}: {base}/replay", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Serve the page (`solara run sim/app.py --production`) and print its address once it answers; returns the exit
    status (2: bad arguments)."""
    parser = Parser(prog="python -m sim.view", description="Serve the organism-networks page.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--replay", metavar="RUN", help="run.h5 (or run directory) the replay page opens")
    parser.add_argument(
        "--runs", metavar="DIR", default="runs", help="the only directory replays are read from (default runs/)"
    )
    parser.add_argument(
        "--install-assets", action="store_true", help="fetch the page's JS/CSS packages with npm into solara's cache"
    )
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return error_exit("sim.view", exc)
    if args.install_assets:
        installed = install_assets()
        print(f"solara assets in {assets_dir()}: " + (f"installed {', '.join(installed)}" if installed else "complete"))
        return 0
    if incompatible_widgets():
        print(f"note: {incompatible_widgets()}", file=sys.stderr)
    missing = missing_assets()
    if missing:
        print(f"note: solara's page assets are not cached ({', '.join(missing)}); without a CDN the page stays blank: "
              "run `python -m sim.view --install-assets` once", file=sys.stderr)  # fmt: skip
    port = args.port or free_port(args.host)
    roots = [Path(args.runs).resolve()]
    if args.replay:
        os.environ[REPLAY_ENV] = str(Path(args.replay).resolve())
        roots.append(Path(args.replay).resolve())  # the run named on the command line, wherever it is
    os.environ[RUNS_ENV] = os.pathsep.join(str(root) for root in roots)
    threading.Thread(target=_announce, args=(args.host, port, bool(args.replay)), daemon=True).start()
    from solara.__main__ import cli

    cli(["run", str(APP_PATH), "--host", args.host, "--port", str(port), "--production", "--no-open"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
