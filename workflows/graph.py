"""A workflow graph, and its two JSON forms: the graph editor's (UI) and the API prompt.

Both are made from the same Graph, with every node's inputs read from the node class's own
INPUT_TYPES (widget order, defaults), so the two files always agree. The UI form follows what
ComfyUI's front end saves (schema version 0.4): positional `widgets_values` in widget order,
where an INT named seed/noise_seed (or marked control_after_generate) is followed by its
"control after generate" value and an image-upload combo by its upload button's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Input types the front end draws as widgets; anything else is a socket (a link).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")  # the front end adds a control widget to these by name
SEED_CONTROL = "fixed"  # keep the seed as saved, so the file reproduces its image
IMAGE_UPLOAD_VALUE = "image"  # what the upload button widget serialises to
NOTE_TYPE = "MarkdownNote"  # front-end-only node: kept in the UI file, absent from the API prompt
UI_SCHEMA_VERSION = 0.4

# Layout (graph editor units): columns by depth in the graph.
COLUMN_GAP = 60
ROW_GAP = 50
NODE_WIDTH = 330
WIDE_NODE_WIDTH = 420
TITLE_HEIGHT = 30
SLOT_HEIGHT = 24
WIDGET_HEIGHT = 26
MULTILINE_HEIGHT = 110
IMAGE_PREVIEW_HEIGHT = 200
MARGIN = 30
NOTE_WIDTH = 400
NOTE_BASE_HEIGHT = 60
NOTE_LINE_HEIGHT = 18
# The graph canvas of a 1600x1000 browser window (the front end's menus take the rest): the
# saved view fits the whole graph into it.
CANVAS_SIZE = (1536, 779)


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for a list of choices
    options: Mapping[str, Any]
    optional: bool

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_seed_control(self) -> bool:
        return self.type == "INT" and (bool(self.options.get("control_after_generate")) or self.name in SEED_NAMES)

    @property
    def has_upload_button(self) -> bool:
        return self.type == "COMBO" and bool(self.options.get("image_upload"))

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        raise KeyError(f"input '{self.name}' has no default: give it a value")


@dataclass(frozen=True)
class NodeSpec:
    class_type: str
    display_name: str
    inputs: tuple[InputSpec, ...]
    output_types: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.inputs)
        raise KeyError(f"{self.class_type} has no input '{name}' (inputs: {known})")

    def output_index(self, name_or_index: str | int) -> int:
        if isinstance(name_or_index, int):
            return name_or_index
        for names in (self.output_names, self.output_types):
            if name_or_index in names:
                return names.index(name_or_index)
        raise KeyError(f"{self.class_type} has no output '{name_or_index}' (outputs: {', '.join(self.output_names)})")


def node_spec(class_type: str, node_class: type, display_name: str | None = None) -> NodeSpec:
    """A NodeSpec from a V1 node class (INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, OUTPUT_NODE)."""
    declared = node_class.INPUT_TYPES()
    inputs = []
    for section, optional in (("required", False), ("optional", True)):
        for name, declaration in declared.get(section, {}).items():
            kind = declaration[0]
            options = declaration[1] if len(declaration) > 1 and isinstance(declaration[1], dict) else {}
            inputs.append(InputSpec(name, "COMBO" if isinstance(kind, (list, tuple)) else str(kind), options, optional))
    types = tuple(str(t) for t in node_class.RETURN_TYPES)
    names = tuple(getattr(node_class, "RETURN_NAMES", None) or types)
    return NodeSpec(class_type, display_name or class_type, tuple(inputs), types, names,
                    bool(getattr(node_class, "OUTPUT_NODE", False)))


@dataclass(frozen=True)
class Output:
    node_id: int
    index: int
    type: str


@dataclass
class Node:
    id: int
    spec: NodeSpec
    title: str
    values: dict[str, Any]  # widget values by input name, every widget input present
    links: dict[str, Output]  # socket (or widget turned socket) inputs by name
    properties: dict[str, Any] = field(default_factory=dict)

    def out(self, name_or_index: str | int = 0) -> Output:
        index = self.spec.output_index(name_or_index)
        return Output(self.id, index, self.spec.output_types[index])


@dataclass
class Note:
    id: int
    text: str


class Graph:
    """Nodes added in order; ids count from 1 in that order (the note comes last)."""

    def __init__(self, specs: Mapping[str, NodeSpec]):
        self.specs = specs
        self.nodes: list[Node] = []
        self.note: Note | None = None

    def add(self, class_type: str, title: str | None = None, properties: Mapping[str, Any] | None = None,
            **inputs: Any) -> Node:
        if class_type not in self.specs:
            raise KeyError(f"node type '{class_type}' is not registered in ComfyUI (is its module present?)")
        spec = self.specs[class_type]
        for name in inputs:
            spec.input(name)  # unknown names fail here, naming the inputs that exist
        values, links = {}, {}
        for input_spec in spec.inputs:
            given = inputs.get(input_spec.name)
            if isinstance(given, Output):
                links[input_spec.name] = given
            elif input_spec.is_widget:
                values[input_spec.name] = input_spec.default() if given is None else given
            elif given is not None:
                raise TypeError(f"{class_type}.{input_spec.name} is a {input_spec.type} socket: pass a node output")
            elif not input_spec.optional:
                raise ValueError(f"{class_type}.{input_spec.name} ({input_spec.type}) is required: connect it")
        node = Node(len(self.nodes) + 1, spec, title or spec.display_name, values, links, dict(properties or {}))
        self.nodes.append(node)
        return node

    def add_note(self, text: str) -> None:
        self.note = Note(len(self.nodes) + 1, text)

    # --- API prompt ---------------------------------------------------------------------------

    def to_api(self) -> dict[str, Any]:
        prompt = {}
        for node in self.nodes:
            inputs: dict[str, Any] = {}
            for input_spec in node.spec.inputs:
                if input_spec.name in node.links:
                    link = node.links[input_spec.name]
                    inputs[input_spec.name] = [str(link.node_id), link.index]
                elif input_spec.name in node.values:
                    inputs[input_spec.name] = node.values[input_spec.name]
            prompt[str(node.id)] = {"inputs": inputs, "class_type": node.spec.class_type, "_meta": {"title": node.title}}
        return prompt

    # --- graph editor JSON --------------------------------------------------------------------

    def _depths(self) -> dict[int, int]:
        depth: dict[int, int] = {}
        for node in self.nodes:  # nodes are added after their inputs, so one pass suffices
            depth[node.id] = 1 + max((depth[link.node_id] for link in node.links.values()), default=-1)
        return depth

    @staticmethod
    def _sockets(node: Node) -> list:
        """The node's UI input slots: sockets, plus widget inputs that are linked."""
        return [s for s in node.spec.inputs if not s.is_widget or s.name in node.links]

    @staticmethod
    def _widget_values(node: Node) -> list:
        values = []
        for spec in node.spec.inputs:
            if not spec.is_widget:
                continue
            values.append(node.values.get(spec.name))  # a linked widget keeps its slot
            if spec.has_seed_control:
                values.append(SEED_CONTROL)
            if spec.has_upload_button:
                values.append(IMAGE_UPLOAD_VALUE)
        return values

    @staticmethod
    def _size(node: Node) -> list[float]:
        widgets = [s for s in node.spec.inputs if s.is_widget and s.name not in node.links]
        multiline = sum(1 for s in widgets if s.options.get("multiline"))
        slots = max(len(Graph._sockets(node)), len(node.spec.output_types), 1)
        height = TITLE_HEIGHT + slots * SLOT_HEIGHT + len(widgets) * WIDGET_HEIGHT + multiline * MULTILINE_HEIGHT
        if any(s.has_upload_button for s in widgets) or node.spec.output_node:
            height += IMAGE_PREVIEW_HEIGHT
        width = WIDE_NODE_WIDTH if multiline or node.spec.output_node else NODE_WIDTH
        return [width, height]

    def _layout(self, columns_max: int, note_size: tuple[float, float] | None):
        """Positions by depth in the graph, deeper nodes than `columns_max` allows stacked in the
        last column; the note goes under the shortest column it fits in. Returns (positions, note position,
        width, height)."""
        depth = self._depths()
        columns: dict[int, list[Node]] = {}
        for node in self.nodes:
            columns.setdefault(min(depth[node.id], columns_max - 1), []).append(node)
        positions: dict[int, list[float]] = {}
        centres: dict[int, float] = {}  # vertical centre of each node placed so far
        bottoms, lefts, widths, x = {}, {}, {}, 0.0

        def height_of_sources(node: Node) -> float:
            """Mean centre of the node's inputs in earlier columns (a column's sort keys are taken
            before any of its nodes is placed). A column ordered by it lists its nodes
            in the order of what feeds them, which keeps wires short and uncrossed (the
            barycentre heuristic)."""
            placed = [centres[link.node_id] for link in node.links.values() if link.node_id in centres]
            return sum(placed) / len(placed) if placed else 0.0

        for column in sorted(columns):
            y, width = 0.0, 0.0
            # The last column may hold a chain of deeper nodes: depth first keeps it in order.
            # Output nodes (image previews) go under the nodes that feed the rest of the graph.
            order = sorted(columns[column], key=lambda n: (depth[n.id], n.spec.output_node, height_of_sources(n), n.id))
            for node in order:
                w, h = self._size(node)
                positions[node.id] = [x, y]
                centres[node.id] = y + h / 2
                y += h + ROW_GAP
                width = max(width, w)
            bottoms[column], lefts[column], widths[column] = y, x, width
            x += width + COLUMN_GAP
        right, bottom = x - COLUMN_GAP, max(bottoms.values()) - ROW_GAP
        note_position = None
        if note_size is not None:
            last = max(bottoms)
            fits = [c for c in bottoms if c == last or widths[c] >= note_size[0]]  # never over the next column
            shortest = min(fits, key=lambda c: (bottoms[c], c))
            note_position = [lefts[shortest], bottoms[shortest]]
            right = max(right, lefts[shortest] + note_size[0])
            bottom = max(bottom, bottoms[shortest] + note_size[1])
        return positions, note_position, right, bottom

    def to_ui(self, canvas_size: tuple[int, int] = CANVAS_SIZE) -> dict[str, Any]:
        depth = self._depths()
        note_size = (NOTE_WIDTH, NOTE_BASE_HEIGHT + NOTE_LINE_HEIGHT * self.note.text.count("\n")) if self.note else None

        def scale_of(layout) -> float:
            _, _, right, bottom = layout
            return min((canvas_size[0] - 2 * MARGIN) / right, (canvas_size[1] - 2 * MARGIN) / bottom, 1.0)

        # The column count that shows the whole graph largest in the canvas.
        layouts = [self._layout(k, note_size) for k in range(2, max(depth.values()) + 2)]
        positions, note_position, right, bottom = max(layouts, key=scale_of)
        scale = scale_of((positions, note_position, right, bottom))

        links, link_ids = [], {}
        for node in self.nodes:
            for slot, spec in enumerate(self._sockets(node)):
                if spec.name in node.links:
                    source = node.links[spec.name]
                    link_id = len(links) + 1
                    link_ids[(node.id, spec.name)] = link_id
                    links.append([link_id, source.node_id, source.index, node.id, slot, source.type])

        order = {node.id: i for i, node in enumerate(sorted(self.nodes, key=lambda n: (depth[n.id], n.id)))}
        ui_nodes = []
        for node in self.nodes:
            inputs = []
            for spec in self._sockets(node):
                entry: dict[str, Any] = {"name": spec.name, "type": spec.type, "link": link_ids.get((node.id, spec.name))}
                if spec.optional:
                    entry["shape"] = 7  # the front end's mark for an optional socket (hollow dot)
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                inputs.append(entry)
            outputs = []
            for index, (name, kind) in enumerate(zip(node.spec.output_names, node.spec.output_types)):
                targets = [l[0] for l in links if l[1] == node.id and l[2] == index]
                outputs.append({"name": name, "type": kind, "links": targets or None, "slot_index": index})
            ui_node: dict[str, Any] = {
                "id": node.id, "type": node.spec.class_type, "pos": positions[node.id], "size": self._size(node),
                "flags": {}, "order": order[node.id], "mode": 0, "inputs": inputs, "outputs": outputs,
                "title": node.title,
                "properties": {"Node name for S&R": node.spec.class_type, **node.properties},
                "widgets_values": self._widget_values(node),
            }
            ui_nodes.append(ui_node)

        if self.note is not None:
            ui_nodes.append({
                "id": self.note.id, "type": NOTE_TYPE, "pos": note_position, "size": list(note_size),
                "flags": {}, "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [],
                "title": "Read me: models to download", "properties": {}, "widgets_values": [self.note.text],
                "color": "#432", "bgcolor": "#653",
            })

        # Open with the whole graph in view (ds: canvas = (graph + offset) * scale).
        offset = [MARGIN / scale, MARGIN / scale]
        return {
            "last_node_id": len(ui_nodes),
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": round(scale, 4), "offset": offset}},
            "version": UI_SCHEMA_VERSION,
        }
