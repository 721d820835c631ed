"""Components: one module here each. The contract every component follows:

1. **Its settings model** `settings/<component>.py`: a class of `infra.settings.Settings`
   (pydantic, strict) whose fields are the settings, each with its type, range or choices,
   default and a one-line docstring; `For("worker")` marks a field that only one role
   reads. group_data/ takes the defaults from the fields, so a default lives only there.
   Rules that span several fields are the model's `rules(problems, host)`. The one
   validation pass (infra/components.py `Catalogue.check_host`) checks every host's data
   against every model before any host is contacted and reports every problem in one
   style (autocode/problems.py): host, field, what is wrong, the fix. Names other
   components read (a path, an account, a derived value) live in the settings module too,
   which imports infra/ and the runtime only: components read each other's settings,
   never each other's deploy code.
2. **One module in `tasks/`** with a `@deploy` function per role it serves, named after
   the role (`orchestrator(catalogue)`, `worker(catalogue)`), reading its typed settings
   once (`Dns.of(host)`) and passing typed values on; and one `COMPONENT = Component(...)`
   (infra/component.py) declaring what it needs from the rest: its settings model, the
   **system users** and **data folders** (owner, group, mode) base creates before any
   component runs, the **worker-facing**, **management** and **private ports** network
   opens or closes on the orchestrator, and the **runtime extras and pins** of which the
   runtime component makes one install per host. A task module never imports another.
3. **One template folder** `templates/<component>/`; a template sees only what the task
   hands it. Configuration the autocode runtime reads is not a template: it is built as
   data, checked with the runtime's own parser, and written with a serializer.
4. **Generic steps are operations in `infra/`** (infra/operations.py), never defined in a
   component: a systemd unit (`systemd_unit`), a folder synced to exactly a set of files
   (`synced_folder`), a file made on one host delivered to others (`file_from_host`),
   files and folders with an owner and mode (`file_content`, `directory`), kernel
   settings, firewall rulesets, a checked config file, a pinned install. State a
   component owns is read through facts (infra/facts.py) and changed by small operations
   that report no change when there is none, with every argument quoted; each operation
   has unit tests without hosts (tests/unit/test_operations_*.py: facts in, commands out).
5. **Its tests**: unit tests of its settings and rendering in tests/unit, and its
   behaviour on real hosts in tests/lab.

Roles (`roles/`) list components; a role that has nothing of a component does not list
it (there are no stub role functions). Adding a component touches its settings module,
its task module, its template folder, its tests and one line per role that runs it:
nothing else. tests/unit/test_layering.py holds the layers to this.
"""
