"""Components: one module here each. The contract every component follows:

1. **One module in `tasks/`** with a `@deploy` function per role it serves, named after
   the role (`orchestrator()`, `worker()`), and one `COMPONENT = Component(...)`
   (infra/component.py) declaring what it needs from the rest:
   - its **settings** with their defaults (for every host, or per role), each overridable
     in an inventory's `data:`; group_data/ collects them, so a default lives only here;
   - a **check** of those settings, run with every other check in the one validation pass
     before any host is contacted, in the one error style (infra/validation.py): every
     problem, each naming the host, the field and the fix;
   - the **system users** and **data folders** (owner, group, mode) it needs, which base
     creates before any component runs; the **worker-facing ports** on the orchestrator,
     which network opens on both ends; the **runtime extras and pins** it needs, of which
     the runtime component makes one install per host.
2. **One template folder** `templates/<component>/`; a template sees only what the task
   hands it. Configuration the autocode runtime reads is not a template: it is built as
   data, checked with the runtime's own parser, and written with a serializer.
3. **Generic steps are operations in `infra/`**, never copied into a component: a systemd
   unit (`systemd_unit`), a folder synced to exactly a set of files (`synced_folder`), a
   file made on one host delivered to others (`file_from_host`), files and folders with
   an owner and mode (`file_content`, `directory`), kernel settings, firewall rulesets.
   State a component owns is read through facts (infra/facts.py) and changed by small
   operations that report no change when there is none, with every argument quoted.
4. **Its tests**: unit tests of its checks and rendering in tests/unit, and its behaviour
   on real hosts in tests/lab.

Roles (`roles/`) only list components. Adding a component touches its module, its
template folder, its tests and one line per role that runs it: nothing else.
"""
