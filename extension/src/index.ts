/**
 * The carme JupyterLab plugin: the side panel, its commands and the timeline.
 *
 * Commands: `carme:insert-connection-code` puts `import carme;
 * carme.init(address=...)` for the selected cluster into the active notebook
 * (a new cell below the active one); `carme:open-timeline` opens the full
 * timeline in the main area; `carme:open-panel` reveals the side panel.
 */
import { ILabShell, ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { ClusterModel, connectionCode } from './model';
import { CarmePanel, PANEL_ID } from './panel';
import { TimelineView } from './timeline';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><circle cx="12" cy="12" r="3"/><circle cx="4.5" cy="6" r="2"/>
<circle cx="19.5" cy="6" r="2"/><circle cx="12" cy="21" r="2"/>
<path d="M5.8 7l4.6 3.4-.6.8L5.2 7.8zM18.2 7l-4.6 3.4.6.8 4.6-3.4zM11.4 14.8h1.2V19h-1.2z"/></g></svg>`;

export const carmeIcon = new LabIcon({ name: 'carme-lab:cluster', svgstr: ICON_SVG });

namespace CommandIDs {
  export const insertCode = 'carme:insert-connection-code';
  export const openTimeline = 'carme:open-timeline';
  export const openPanel = 'carme:open-panel';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'carme-lab:plugin',
  description: 'A side panel that shows and steers carme clusters.',
  autoStart: true,
  optional: [ILabShell, ILayoutRestorer, ICommandPalette, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null
  ) => {
    const model = new ClusterModel();
    const panel = new CarmePanel(model, {
      insertCode: () => void app.commands.execute(CommandIDs.insertCode),
      openTimeline: () => void app.commands.execute(CommandIDs.openTimeline)
    });
    panel.title.icon = carmeIcon;
    panel.title.caption = 'carme cluster';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, PANEL_ID);
    model.start();

    let timeline: MainAreaWidget<TimelineView> | null = null;

    app.commands.addCommand(CommandIDs.insertCode, {
      label: 'Insert connection code',
      caption: 'Insert `import carme; carme.init(address=...)` for the selected cluster below the active cell',
      isEnabled: () => notebooks?.currentWidget != null,
      execute: () => {
        const current = notebooks?.currentWidget;
        if (!current) {
          return;
        }
        const notebook = current.content;
        NotebookActions.insertBelow(notebook);
        const cell = notebook.activeCell;
        if (cell) {
          cell.model.sharedModel.setSource(connectionCode(model.selected));
        }
        app.shell.activateById(current.id);
      }
    });

    app.commands.addCommand(CommandIDs.openTimeline, {
      label: 'Open carme timeline',
      caption: 'The task timeline of the cluster the panel shows, in the main area',
      execute: async () => {
        if (timeline === null || timeline.isDisposed) {
          timeline = new MainAreaWidget({ content: new TimelineView(() => model.showing) });
          timeline.id = 'carme-timeline-main';
          timeline.title.label = 'carme timeline';
          timeline.title.icon = carmeIcon;
          timeline.title.closable = true;
        }
        if (!timeline.isAttached) {
          app.shell.add(timeline, 'main');
        }
        app.shell.activateById(timeline.id);
        await timeline.content.refresh();
      }
    });

    app.commands.addCommand(CommandIDs.openPanel, {
      label: 'Show carme cluster panel',
      execute: () => {
        if (labShell) {
          labShell.activateById(PANEL_ID);
        } else {
          app.shell.activateById(PANEL_ID);
        }
      }
    });

    for (const command of [CommandIDs.insertCode, CommandIDs.openTimeline, CommandIDs.openPanel]) {
      palette?.addItem({ command, category: 'carme' });
    }
    app.contextMenu.addItem({ command: CommandIDs.insertCode, selector: '.jp-Notebook', rank: 90 });
  }
};

export default plugin;
